"""``gptclf audit``: find the wrong labels, duplicates, train/test leaks and outliers of a data set.

    rows.py      every row of the files, numbered as they hold them; fingerprints; the folds
    crossfit.py  out-of-fold probabilities from k tails trained on one frozen-trunk cache
    issues.py    Cleanlab's label issues and outliers, duplicates and leaks from the trunk vectors
    report.py    audit.csv, audit.json, report.html, the terminal summary
    run.py       run_audit: the steps in order; audit_first: gptclf train --audit's audit, before the run
    drop.py      gptclf train --drop-label-issues (and --audit): the rows an audit flags, checked against the data

Needs the ``audit`` extra (cleanlab, which brings pandas and scikit-learn).
"""
