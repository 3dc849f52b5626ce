"""Projection canvas: accumulates line integrals of attenuation through simple 3-D solids.

A radiograph is, to first order, ``exp(-integral of mu along the ray)``. Each primitive adds
``mu * chord length`` of an ellipsoid, tapered capsule, hollow tube or elliptic band, which
gives cortical bone its bright rim and darker marrow for free. Geometry is in world
centimetres; the canvas maps pixels to world coordinates with a rotation, zoom and mirror,
and every primitive only touches the pixels of its bounding box.
"""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32


class Canvas:
    """Attenuation accumulator for one image.

    Args:
        h: Rows of the image.
        w: Columns of the image.
        center: World point (cm) at the image centre.
        fov: World extent (cm) of the longer image side.
        angle: In-plane rotation of the anatomy (radians).
        mirror: Mirror the anatomy left-right (the other body side).
        squash: Horizontal compression of the anatomy (oblique views), 1 = none.
    """

    def __init__(
        self,
        h: int,
        w: int,
        *,
        center: tuple[float, float],
        fov: float,
        angle: float = 0.0,
        mirror: bool = False,
        squash: float = 1.0,
    ) -> None:
        self.h, self.w = h, w
        self.px = fov / max(h, w)
        self.cx, self.cy = center
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        self.sx = -1.0 if mirror else 1.0
        self.squash = squash
        dx = ((np.arange(w, dtype=F32) + 0.5 - w / 2) * self.px * self.sx / squash)[None, :]
        dy = ((np.arange(h, dtype=F32) + 0.5 - h / 2) * self.px)[:, None]
        self.u = (self.cx + self.cos * dx - self.sin * dy).astype(F32)
        self.v = (self.cy + self.sin * dx + self.cos * dy).astype(F32)
        self.bone = np.zeros((h, w), F32)
        self.soft = np.zeros((h, w), F32)
        self.metal = np.zeros((h, w), F32)

    # -- geometry -------------------------------------------------------------------------
    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """Return the (row, col) of a world point."""
        d0, d1 = x - self.cx, y - self.cy
        dx = (self.cos * d0 + self.sin * d1) * self.sx * self.squash
        dy = -self.sin * d0 + self.cos * d1
        return dy / self.px + self.h / 2 - 0.5, dx / self.px + self.w / 2 - 0.5

    def _box(self, x: float, y: float, r: float) -> tuple[slice, slice] | None:
        row, col = self.to_pixel(x, y)
        rad = r / self.px + 1.5
        r0, r1 = max(int(row - rad), 0), min(int(row + rad) + 2, self.h)
        c0, c1 = max(int(col - rad), 0), min(int(col + rad) + 2, self.w)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def _box_pts(self, xs: np.ndarray, ys: np.ndarray, pad: float) -> tuple[slice, slice] | None:
        """Pixel box around world points, padded by ``pad`` cm."""
        rows, cols = self.to_pixel(xs, ys)  # type: ignore[arg-type]
        rad = pad / self.px + 1.5
        r0, r1 = max(int(rows.min() - rad), 0), min(int(rows.max() + rad) + 2, self.h)
        c0, c1 = max(int(cols.min() - rad), 0), min(int(cols.max() + rad) + 2, self.w)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def _layer(self, name: str) -> np.ndarray:
        return {"bone": self.bone, "soft": self.soft, "metal": self.metal}[name]

    # -- primitives -----------------------------------------------------------------------
    def ell(
        self,
        x: float,
        y: float,
        a: float,
        b: float,
        ang: float = 0.0,
        mu: float = 1.0,
        depth: float | None = None,
        p: int = 2,
        layer: str = "bone",
    ) -> None:
        """Solid (super-)ellipsoid with semi-axes ``a``, ``b`` in plane and ``depth`` along the ray."""
        box = self._box(x, y, max(a, b))
        if box is None:
            return
        du, dv = self.u[box] - x, self.v[box] - y
        c, s = math.cos(ang), math.sin(ang)
        xr = (du * c + dv * s) / a
        yr = (dv * c - du * s) / b
        if p == 2:
            q = 1.0 - xr * xr - yr * yr
        else:
            x2, y2 = xr * xr, yr * yr
            q = 1.0 - x2 * x2 - y2 * y2 if p == 4 else 1.0 - x2 ** (p / 2) - y2 ** (p / 2)
        d = min(a, b) if depth is None else depth
        self._layer(layer)[box] += (2.0 * mu * d) * np.sqrt(np.maximum(q, 0.0))

    def bone_ell(
        self,
        x: float,
        y: float,
        a: float,
        b: float,
        ang: float = 0.0,
        cortex: float = 0.25,
        mu: float = 1.0,
        marrow: float = 0.35,
        depth: float | None = None,
        p: int = 2,
    ) -> None:
        """Ellipsoidal bone: cortical shell of thickness ``cortex`` (cm) around marrow."""
        d = min(a, b) if depth is None else depth
        self.ell(x, y, a, b, ang, mu, d, p)
        ia, ib = a - cortex, b - cortex
        if ia > 0 and ib > 0:
            self.ell(x, y, ia, ib, ang, marrow - mu, max(d - cortex, 0.05), p)

    def tube(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        r: float,
        r0: float | None = None,
        r1: float | None = None,
        flare: float = 0.2,
        cortex: float = 0.35,
        mu: float = 1.0,
        marrow: float = 0.3,
        layer: str = "bone",
    ) -> None:
        """Long bone (or solid rod when ``cortex`` >= 1) from p0 to p1 with flared, rounded ends.

        ``r`` is the shaft radius, ``r0``/``r1`` the radii at the ends, reached over the
        ``flare`` fraction of the length; the cortex (a fraction of the radius) thins at the ends.
        """
        r0 = r if r0 is None else r0
        r1 = r if r1 is None else r1
        length = math.hypot(x1 - x0, y1 - y0) + 1e-6
        rmax = max(r, r0, r1)
        box = self._box((x0 + x1) / 2, (y0 + y1) / 2, length / 2 + rmax)
        if box is None:
            return
        ex, ey = (x1 - x0) / length, (y1 - y0) / length
        du, dv = self.u[box] - x0, self.v[box] - y0
        t = np.clip((du * ex + dv * ey) / length, 0.0, 1.0)
        px, py = du - t * (length * ex), dv - t * (length * ey)
        d2 = px * px + py * py
        w0 = np.maximum(1.0 - t / flare, 0.0) ** 2
        w1 = np.maximum(1.0 - (1.0 - t) / flare, 0.0) ** 2
        rad = r + (r0 - r) * w0 + (r1 - r) * w1
        acc = mu * np.sqrt(np.maximum(rad * rad - d2, 0.0))
        if cortex < 1.0:
            ends = np.minimum(w0 + w1, 1.0)
            ri = rad * (1.0 - (cortex * (1.0 - ends) + 0.1 * ends))
            acc += (marrow - mu) * np.sqrt(np.maximum(ri * ri - d2, 0.0))
        self._layer(layer)[box] += 2.0 * acc

    def rod(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        r0: float,
        r1: float | None = None,
        mu: float = 1.0,
        layer: str = "bone",
        depth_scale: float = 1.0,
    ) -> None:
        """Solid tapered capsule (processes, soft-tissue limbs); ``depth_scale`` flattens it."""
        r1 = r0 if r1 is None else r1
        self.tube(x0, y0, x1, y1, (r0 + r1) / 2, r0, r1, flare=1.0, cortex=1.0,
                  mu=mu * depth_scale, layer=layer)

    def arc(
        self,
        x: float,
        y: float,
        a: float,
        b: float,
        t0: float,
        t1: float,
        w: float,
        ang: float = 0.0,
        mu: float = 1.0,
        cortex: float = 0.4,
        marrow: float = 0.3,
        layer: str = "bone",
        taper: float = 0.12,
    ) -> None:
        """Curved bone (rib, crest, ring) of half-width ``w`` along an ellipse from angle t0 to t1.

        Angles follow image conventions (y down): t = -pi/2 is the top of the ellipse.
        """
        c, s = math.cos(ang), math.sin(ang)
        tt = np.linspace(t0, t1, 24)
        ex, ey = a * np.cos(tt), b * np.sin(tt)
        box = self._box_pts(x + ex * c - ey * s, y + ex * s + ey * c, w)
        if box is None:
            return
        du, dv = self.u[box] - x, self.v[box] - y
        xr = du * c + dv * s
        yr = dv * c - du * s
        xn, yn = xr / a, yr / b
        rho = np.sqrt(xn * xn + yn * yn) + 1e-6
        dist = (rho - 1.0) * np.sqrt(xr * xr + yr * yr) / rho
        near = np.abs(dist) < w  # only the band is evaluated further
        if not near.any():
            return
        xn, yn, dist = xn[near], yn[near], dist[near]
        span = t1 - t0
        ph = np.mod(np.arctan2(yn, xn) - t0, 2 * math.pi)
        frac = ph / span
        edge = np.clip(np.minimum(frac, 1.0 - frac) / taper, 0.0, 1.0) if span < 2 * math.pi - 1e-3 else 1.0
        ww = w * np.sqrt(edge) * (frac <= 1.0)
        d2 = dist * dist
        acc = mu * np.sqrt(np.maximum(ww * ww - d2, 0.0))
        if cortex < 1.0:
            wi = ww * (1.0 - cortex)
            acc += (marrow - mu) * np.sqrt(np.maximum(wi * wi - d2, 0.0))
        self._layer(layer)[box][near] += 2.0 * acc
