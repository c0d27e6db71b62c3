"""The parts every method's trainer is built from: the run directory (rundir), the policy with its optimizer and
training steps (policy), and the shared loop (loop)."""
