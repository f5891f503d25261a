"""A tabular benchmark of Q3R sweeps: a grid trained once (``table``), search strategies replayed against
it through the sweep's own searcher and scheduler classes (``replay``), scored (``scores``, ``fidelity``)."""
