"""QA/QC per HJ 75-2017: flags from plant and analyzer state, value checks, calibration drift
and out-of-control periods, maintenance windows, substitution of invalid hours, audit."""
