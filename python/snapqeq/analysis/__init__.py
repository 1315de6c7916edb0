"""Error metrics and plots of model results (RMSE tables, parity plots, learning curves)."""
