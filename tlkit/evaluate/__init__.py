"""``tlkit evaluate``: a finished quantum run scored under other conditions (noise, shots, a device)."""
