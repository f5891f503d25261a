"""Reports and plots of q3r-tune sweeps."""
