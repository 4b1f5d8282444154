"""Images for the API: a sample as a base64 PNG a browser shows crisply."""

from __future__ import annotations

import base64
import io


def png(image) -> str:
    """(C, H, W) floats in [0, 1] -> a base64 PNG, scaled up so a browser shows it crisply."""
    import numpy as np
    from PIL import Image

    px = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    px = px[0] if px.shape[0] == 1 else px.transpose(1, 2, 0)
    scale = max(1, 128 // max(px.shape[:2]))
    img = Image.fromarray(px).resize((px.shape[1] * scale, px.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
