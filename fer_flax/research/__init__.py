"""Experiments built from many runs: multi-seed statistics, the leaderboard, the comparison
report (`compare`) and hyper-parameter sweeps (`sweep`). The top layer of the library: may import
`training` and `inference`; nothing imports it."""
