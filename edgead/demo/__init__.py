"""The demo stage: `edgead demo`, the whole product on an embedded default in a few minutes.

- demo.py: the steps (synthetic product, train, evaluate, build-engine, calibrate, run the belt);
- conveyor.py: the simulated belt of good and defective parts the run loop inspects;
- report.py: the HTML report (index.html + report.json) the demo writes;
- rates.py: the report's numbers (catch rate per defect type with Wilson intervals, the ROC operating point);
- figures.py: the report's belt, ROC and colour-bar figures.

This stage imports torch (it trains a model); it uses the other stages only through their public
functions, as a user's script would.
"""
