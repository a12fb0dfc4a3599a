"""Test-session settings (set before torch is imported by any test module)."""
import os

# OpenMP threads spin-wait by default; on a small or shared CPU a waiting
# thread steals the core its partner needs and runs slow by up to 10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
