"""placeholder"""
BOUNDS = {}
class BoundSpec: pass
def compute_bounds(*a, **k): pass
def register_bound(*a, **k): pass
