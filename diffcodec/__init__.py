"""diffcodec: a progressive, lossy-to-lossless image codec whose prior is a DDPM epsilon-network.

Data flow: image (image.py) -> codec.py (Algorithms 3 and 4) over the chain a trajectory plan
gives (trajectory.py, chain.py) -> one coder per step (coders/) -> entropy.py -> container.py.
"""
