import os

# Tests run on the CPU; keep XLA from grabbing every core for one tiny op.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
