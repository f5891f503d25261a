"""tuning: sweeps of one-trial runs with Ray Tune, ASHA, Optuna and MLflow, and the ``q3r-tune`` CLI.

Subpackages by concern, lowest layer first (``tests/test_layers.py`` checks that none imports upward):
``trial`` (one trial: spec, data, models, techniques, recipe, evaluation), ``spec`` (the sweep spec and
search spaces), ``analysis`` (records, Pareto fronts, recommendations, the confirmation plan: pure),
``tracking`` (MLflow store, spool, Ray callback, results read back), then ``dashboards`` (outside this
package), ``artifacts`` (what lands on the parent run, the exported model), ``sweep`` (the Ray side:
driver, trainable, searcher, schedulers) and ``cli``.
"""
