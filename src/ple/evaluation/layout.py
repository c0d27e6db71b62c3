"""The names of what `ple compare` writes at the top of a grid directory, in one place."""

GRID_FILE = "compare.yaml"  # the grid as run, stated as a compare file
GRID_MARKER = ".ple-compare"  # written first into a new grid directory: what tells a grid from a user's folder
INVOCATIONS = "invocations"  # one record per `ple compare` invocation (grid.Invocation)
