"""The networks and their model-level checks: CENT/4G energy models, the OLCAO
potential-coefficient head (mixture density network on per-site features), committees and
the extrapolation guard."""
