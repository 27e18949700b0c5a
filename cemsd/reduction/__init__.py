"""Emission reductions from validated hours: bypass events, the calculator, reports and
the verification bundle (quantification.md; CAR China Adipic Acid Production Protocol)."""
