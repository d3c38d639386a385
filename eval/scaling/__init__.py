"""Scaling-law study: how the optimizer changes the exponent alpha of L(N) ~ N^-alpha in
random-feature regression.

Setup (every choice, stated):

* Latent inputs ``x ~ N(0, diag(lambda))`` in R^M, M = 4096, with the power-law spectrum
  ``lambda_k = k^-(1+s)``, k = 1..M (the convention of ``meta_train.models.RFRegressionSpec``);
  s is the spectral condition, s in {0.5, 0.75, 1.0, 1.25, 1.5, 2.0}.
* Teacher ``y = x . beta + eps`` with ``beta_k ~ N(0, 1)`` i.i.d., so the target's power in
  eigendirection k is ``lambda_k beta_k^2 ~ k^-(1+s)`` (power-law coefficients), and label noise
  ``eps ~ N(0, sigma^2)``, sigma = 0.1.
* N random features ``phi(x) = F_N x / sqrt(M)``, F_N the first N rows of one fixed
  ``N_max x M`` standard Gaussian matrix per seed (nested features, so the N-grid shares
  randomness); model ``f(x) = phi(x) . w``, w in R^N is the parameter vector (N = parameter
  count), initialized at 0. N on a log2 grid: 64..4096 (``full``), 64..1024 (``quick``).
* Squared loss ``L(w) = E[(f(x) - y)^2] / 2``. Data regime: the population (infinite-data)
  limit. Every step uses the exact population gradient ``H w - b`` with
  ``H = F Lambda F^T / M`` and ``b = F Lambda beta / sqrt(M)``, and L is evaluated exactly as
  ``r^T Lambda r / 2 + sigma^2 / 2`` with ``r = F^T w / sqrt(M) - beta``; the noise floor is
  ``sigma^2 / 2`` exactly, so ``L - floor`` carries no sampling noise.
* A fixed step budget T (1000 ``full``, 500 ``quick``) for every optimizer and N.
* Optimizers: gradient descent; Adam; diagonal Fisher preconditioning (for squared loss the
  Fisher is H; its exact diagonal); a Shampoo-style Kronecker preconditioner on w reshaped to
  an [a, b] matrix (``L^-1/4 G R^-1/4`` with accumulated ``L = eps I + sum G G^T``,
  ``R = eps I + sum G^T G``); full natural gradient = damped Newton,
  ``(H + mu I)^-1 g`` with ``mu = 1e-6 lambda_max(H)``; and any learned optimizer given with
  ``--lo`` (w is a vector leaf; the LO gets no tuning).
* LR tuned per (optimizer, N, s) on a log grid on a tuning seed (0); reported on seeds 1..n
  (>= 5 in ``full``). GD's and diagonal's LRs are multiples of 1 / (preconditioned)
  lambda_max, natural gradient's are absolute (1 = Newton), Adam's and Shampoo's absolute.
* alpha: least squares of ``log(mean over seeds of L - floor)`` on ``log N`` over
  ``N <= M / 4`` (64..1024; larger N are run and plotted but not fitted: as N -> M the features
  span the latent space and converged losses collapse, a finite-M artifact); 95% confidence
  intervals from 1000 bootstrap resamples of the seeds. ``--refit scaling.json`` recomputes
  the table and plots from saved raw losses.

References: Ramani & Jain, "On the Optimizer Dependence of Neural Scaling Laws", arXiv
2605.29387; Bordelon, Atanasov & Pehlevan, "A Dynamical Model of Neural Scaling Laws",
arXiv 2402.01092.

Run ``python -m eval.scaling --variant quick`` (a few minutes on 2 cores) or ``--variant
full``; add ``--lo PATH`` to place a trained LO.

Modules: ``problem`` (the regression problem), ``optimizers``, ``fit`` (alpha and its CI),
``study`` (orchestration), ``report`` (outputs), ``cli`` (the command line, ``main``).
"""

from eval.scaling.fit import alpha_table, bootstrap_alpha, fit_alpha
from eval.scaling.optimizers import GRIDS, OPTIMIZERS, make_optimizer, shampoo
from eval.scaling.problem import NOISE, Problems, excess_loss, problem, top_eigenvalue
from eval.scaling.report import write_outputs
from eval.scaling.study import VARIANTS, Variant, run_cell, run_study


__all__ = ["GRIDS", "NOISE", "OPTIMIZERS", "VARIANTS", "Problems", "Variant", "alpha_table",
           "bootstrap_alpha", "excess_loss", "fit_alpha", "make_optimizer", "problem",
           "run_cell", "run_study", "shampoo", "top_eigenvalue", "write_outputs"]
