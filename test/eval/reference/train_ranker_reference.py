#!/usr/bin/env python3
"""Reference fits for test/eval/test-train-ranker.ts, computed outside the TypeScript code.

Rebuilds the test's deterministic dataset (same 32-bit LCG, same formulas) and minimises
    sum_i [log(1 + e^eta_i) - y_i eta_i] + (l2 / 2) * sum_{j>=1} (sd_j w_j)^2     (bias w_0 unpenalised)
with sd_j the population standard deviation (ddof 0) of feature j over the rows (1 if it is 0)
with two independent scipy optimisers (L-BFGS-B, and trust-exact with the exact Hessian); they
must agree within 1e-6, and the one with the smaller gradient is printed. Also prints the dataset checksums, and the log-loss
(mean, nats) and AUC (Mann-Whitney U via scipy.stats.rankdata, midranks for ties) of the first fit.
Run once: python3 test/eval/reference/train_ranker_reference.py  (numpy, scipy)
"""
import math
import numpy as np
from scipy.optimize import minimize
from scipy.stats import rankdata
from scipy.special import expit

FEATURES = ["ann_similarity", "ctr_prior_logit", "popularity_rate", "quality", "source_ann", "source_targeting", "source_popularity"]


def dataset(n, seed):
    s = seed & 0xFFFFFFFF

    def u():
        nonlocal s
        s = (s * 1664525 + 1013904223) & 0xFFFFFFFF
        return s / 4294967296.0

    X, y = [], []
    for _ in range(n):
        ann = 2 * u() - 1
        ctr = -4 + 3 * u()
        pop = 0.04 * u()
        q = u()
        sa = 1.0 if u() < 0.5 else 0.0
        st = 1.0 if u() < 0.4 else 0.0
        sp = 1.0 if u() < 0.3 else 0.0
        eta = -0.5 + 1.5 * ann + 0.6 * ctr + 12 * pop + 0.8 * q + 0.4 * sa - 0.3 * st + 0.2 * sp
        p = 1 / (1 + math.exp(-eta))
        y.append(1 if u() < p else 0)
        X.append([ann, ctr, pop, q, sa, st, sp])
    return np.array(X), np.array(y, dtype=float)


def fit(X, y, l2, cols):
    A = np.hstack([np.ones((len(y), 1)), X[:, cols]])
    sd = X[:, cols].std(axis=0)
    sd[sd == 0] = 1.0
    pen = np.r_[0.0, l2 * sd * sd]

    def f(w):
        eta = A @ w
        return np.sum(np.logaddexp(0, eta) - y * eta) + 0.5 * np.sum(pen * w * w)

    def g(w):
        return A.T @ (expit(A @ w) - y) + pen * w

    def h(w):
        p = expit(A @ w)
        return (A * (p * (1 - p))[:, None]).T @ A + np.diag(pen)

    w0 = np.zeros(A.shape[1])
    r1 = minimize(f, w0, jac=g, method="L-BFGS-B", options={"gtol": 1e-13, "ftol": 1e-16, "maxiter": 100000, "maxcor": 30})
    r2 = minimize(f, w0, jac=g, hess=h, method="trust-exact", options={"gtol": 1e-12})
    gap = np.max(np.abs(r1.x - r2.x))
    assert gap < 1e-6, (gap, r1.x, r2.x)
    return min((r1.x, r2.x), key=lambda w: np.max(np.abs(g(w))))


def main():
    X, y = dataset(400, 12345)
    print(f"checksums: rows {len(y)} positives {int(y.sum())} sum_x {X.sum(axis=0).tolist()}")
    cases = [
        ("all features, l2 1", 1.0, FEATURES),
        ("all features, l2 0", 0.0, FEATURES),
        ("all features, l2 50", 50.0, FEATURES),
        ("ann_similarity,quality,source_ann, l2 10", 10.0, ["ann_similarity", "quality", "source_ann"]),
    ]
    for name, l2, feats in cases:
        cols = [FEATURES.index(c) for c in feats]
        w = fit(X, y, l2, cols)
        out = {"bias": w[0]}
        out.update({c: w[i + 1] for i, c in enumerate(feats)})
        print(name + ": " + ", ".join(f"{k}: {v:.12g}" for k, v in out.items()))
        if l2 == 1.0:
            p = expit(np.hstack([np.ones((len(y), 1)), X]) @ w)
            ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
            r = rankdata(p)
            npos = y.sum()
            nneg = len(y) - npos
            a = (r[y == 1].sum() - npos * (npos + 1) / 2) / (npos * nneg)
            print(f"  log_loss {ll:.12g} auc {a:.12g}")


main()
