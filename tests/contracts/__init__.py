"""Contract tests over every registry entry: every registered model and every layer class
of ``lipcert.nn`` gets the same checks, driven by the test banks in ``bank.py``. Adding a model or a
layer without a bank entry fails ``test_every_*_has_a_bank_entry``."""
