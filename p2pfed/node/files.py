"""Names of the files a peer keeps in its state folder, importable without torch.

``p2pfed run`` checks a restarted node's checkpoint before the model is built.
"""

CHECKPOINT = "checkpoint.pt"
