"""Forward-only probes of the published accounts of subliminal learning (issue 23): the token
entanglement scan with its controls (entangle.py, run.py), the steering-vector readout
(core/steering.py, shared with distill) and divergence-token masks (divergence.py). Imports core/ and sublim.* only."""
