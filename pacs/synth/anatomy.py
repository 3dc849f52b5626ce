"""Procedural skeletal anatomy in world centimetres, one scene per body area.

Neighbouring regions share a scene and differ in centring, field of view and view, as they
do in real archives: chest / thoracic spine / lumbar spine (trunk), skull / cervical spine
(head and neck), clavicle / shoulder (shoulder girdle), pelvis / hip, ankle / foot. That makes
the look-alikes real: a hip film shows ilium and obturator ring, a clavicle film the acromion
and the humeral head, a lateral ankle the calcaneus. Every scene draws the right side in
standard orientation; the caller mirrors for the other side.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from radaudit.pacs.synth.canvas import Canvas

PI = math.pi
SOFT = 0.2  # soft-tissue attenuation per cm, relative to cortical bone = 1
Draw = Callable[[Canvas, np.random.Generator], None]


def _j(rng: np.random.Generator, x: float, rel: float = 0.08) -> float:
    """Jitter ``x`` by a relative normal amount (intra-class variation of size)."""
    return float(x * (1.0 + rel * rng.standard_normal()))


# -- trunk ---------------------------------------------------------------------------------
def _vertebra_ap(cv: Canvas, x: float, y: float, w: float, h: float, lumbar: bool,
                 rng: np.random.Generator, faint: float = 1.0) -> None:
    """Vertebra seen AP: body, two pedicle rings, spinous process, transverse processes."""
    cv.bone_ell(x, y, w, h, cortex=0.22, mu=faint, marrow=0.35 * faint, depth=1.6, p=4)
    for sx in (-1, 1):
        cv.bone_ell(x + sx * w * 0.62, y - h * 0.25, 0.38, 0.52, cortex=0.14, mu=faint, marrow=0.2 * faint)
        if lumbar:
            tl = _j(rng, 2.9 * w / 2.5, 0.1)
            cv.rod(x + sx * w * 0.8, y - 0.2, x + sx * (w + tl), y + 0.1, 0.5, 0.3, mu=0.8 * faint)
        else:
            cv.rod(x + sx * w * 0.8, y - 0.4, x + sx * (w + 0.9), y - 0.8, 0.45, 0.4, mu=0.8 * faint)
    cv.ell(x, y + h * 0.55, 0.35, 0.75, mu=0.9 * faint, depth=0.8)


def _vertebra_lat(cv: Canvas, x: float, y: float, d: float, h: float, tilt: float, lumbar: bool,
                  faint: float = 1.0) -> None:
    """Vertebra seen laterally (anterior to the left): body box, pedicle, spinous process."""
    cv.bone_ell(x, y, d, h, ang=tilt, cortex=0.2, mu=faint, marrow=0.33 * faint, depth=2.0, p=4)
    c, s = math.cos(tilt), math.sin(tilt)
    px, py = x + (d + 0.9) * c, y + (d + 0.9) * s
    cv.rod(x + d * c, y + d * s - 0.3, px + 0.4, py - 0.2, 0.55, 0.45, mu=0.7 * faint)
    if lumbar:
        cv.rod(px + 0.4, py, px + 3.4, py + 0.5, 0.75, 0.55, mu=0.6 * faint, depth_scale=0.6)
    else:
        cv.rod(px + 0.4, py, px + 2.6, py + 2.2, 0.4, 0.25, mu=0.7 * faint)
    cv.ell(px + 0.3, py - h * 0.9, 0.45, 0.55, mu=0.5 * faint)  # facet joint


def _ribs_ap(cv: Canvas, rng: np.random.Generator, x0: float, levels: list[float], first: int,
             widen: float = 1.0) -> None:
    """Posterior and anterior ribs of both sides, one pair per vertebral level y."""
    for k, y in enumerate(levels):
        i = first + k
        a = widen * (6.0 + 0.9 * min(i, 7) - 0.5 * max(i - 8, 0))
        b = 3.5 + 0.25 * min(i, 8)
        end = -0.2 if i <= 10 else -0.9 - 0.25 * (i - 10)
        for sx in (-1, 1):
            xc = x0 + sx * 1.4
            t0, t1 = (-PI / 2 - 0.15, end) if sx > 0 else (-PI - end, -PI / 2 + 0.15)
            cv.arc(xc, y + b - 0.8, a, b, t0, t1, 0.55, mu=0.95, cortex=0.45)
            if i <= 10:  # anterior ribs: fainter, descending medially
                ta, tb = (0.15, 1.15) if sx > 0 else (PI - 1.15, PI - 0.15)
                cv.arc(xc, y + b - 0.8, a, b + 3.0, ta, tb, 0.6, mu=0.5, cortex=0.5)


def draw_trunk_ap(cv: Canvas, rng: np.random.Generator) -> None:
    """Thorax and abdomen PA/AP: lungs, heart, diaphragm, spine, ribs, clavicles, bowel gas."""
    scol = rng.normal(0, 0.8)  # mild scoliosis
    cv.rod(0, -22, 0, 46, _j(rng, 16.0, 0.06), mu=SOFT, layer="soft", depth_scale=0.7)
    cv.ell(0, -21, 6.5, 5, mu=SOFT, layer="soft", depth=5)  # neck / upper mediastinum
    dia_r, dia_l = _j(rng, 7.5, 0.12), _j(rng, 8.5, 0.12)
    for sx, dia in ((1, dia_r), (-1, dia_l)):
        cv.ell(sx * 8.3, (dia - 17) / 2, _j(rng, 6.8, 0.07), (dia + 17) / 2, mu=-0.16, layer="soft", depth=7)
    cv.ell(-1.5 - rng.uniform(0, 1.5), 4.0, _j(rng, 6.2, 0.1), _j(rng, 5.2, 0.1), ang=0.3, mu=0.17,
           layer="soft", depth=5.5)  # heart (patient's left = image right after mirror)
    cv.rod(0, -20, 0, 2, 2.8, 3.5, mu=0.12, layer="soft")  # mediastinum
    cv.ell(-6.0, dia_l + 1.8, 2.4, 1.4, mu=-0.25, layer="soft", depth=2)  # stomach bubble
    levels_t = [-14.0 + 2.35 * i for i in range(12)]
    levels_l = [levels_t[-1] + 2.9 + 3.6 * i for i in range(5)]
    for i, y in enumerate(levels_t):
        xs = scol * math.sin(y / 12)
        _vertebra_ap(cv, xs, y, 1.45 + 0.07 * i, 0.9 + 0.03 * i, False, rng, faint=0.85)
    for i, y in enumerate(levels_l):
        xs = scol * math.sin(y / 12)
        _vertebra_ap(cv, xs, y, 2.3 + 0.08 * i, 1.35, True, rng)
    _ribs_ap(cv, rng, 0.0, levels_t, 1)
    for sx in (-1, 1):  # clavicles, scapulae, humeral heads
        cv.tube(sx * 1.8, -16.5, sx * 15.5, -17.8 + rng.normal(0, 0.5), 0.7, r0=1.0, r1=0.9, flare=0.15)
        cv.ell(sx * 12.5, -10, 3.8, 7.0, ang=sx * 0.25, mu=0.45, depth=0.45)
        cv.bone_ell(sx * 17.5, -16, 2.6, 2.6, cortex=0.25)
    for sx in (-1, 1):  # iliac crests and sacrum below the lumbar spine
        cv.arc(sx * 8.5, levels_l[-1] + 9.5, 7.5, 6.5, -PI / 2 - 0.9, -PI / 2 + 0.9, 0.6, ang=sx * 0.3)
        cv.ell(sx * 8.0, levels_l[-1] + 10, 6, 5, ang=sx * 0.45, mu=0.55, depth=0.6)
    cv.ell(0, levels_l[-1] + 7.5, 3.8, 4.5, mu=0.6, depth=2.5)
    for _ in range(rng.integers(4, 14)):  # bowel gas
        cv.ell(rng.uniform(-12, 12), rng.uniform(14, 42), rng.uniform(0.8, 2.6), rng.uniform(0.7, 2.0),
               ang=rng.uniform(0, PI), mu=-0.2, layer="soft", depth=1.5)
    for sx in (-1, 1):  # psoas
        cv.ell(sx * 4.5, levels_l[2] + 2, 2.2, 9, ang=-sx * 0.25, mu=0.05, layer="soft", depth=3)


def draw_trunk_lat(cv: Canvas, rng: np.random.Generator) -> None:
    """Thorax and abdomen lateral (anterior to the left): spine posterior, lungs, heart, ribs."""
    cv.rod(0, -22, 0, 46, _j(rng, 12.5, 0.06), mu=SOFT, layer="soft", depth_scale=1.2)
    cv.ell(-1.0, -3.0, _j(rng, 8.0, 0.07), _j(rng, 12.0, 0.07), mu=-0.18, layer="soft", depth=10)
    cv.ell(-4.5, 4.5, 5.0, 5.0, mu=0.16, layer="soft", depth=6)
    cv.tube(-9.0, -15, -9.8, 2, 0.7, flare=0.1, mu=0.8)  # sternum
    kyph = rng.uniform(1.0, 3.0)
    ys = [-14.0 + 2.35 * i for i in range(12)] + [16.8 + 3.6 * i for i in range(5)]
    for i, y in enumerate(ys):
        lumbar = i >= 12
        x = 6.0 + kyph * math.cos((y - 0) / 20) - (1.5 if lumbar else 0) * math.sin((y - 16) / 9)
        tilt = -0.15 * math.sin((y - 4) / 14)
        d = 1.6 + 0.06 * min(i, 12) + (0.5 if lumbar else 0)
        _vertebra_lat(cv, x - d, y, d, 0.9 + 0.03 * i + (0.4 if lumbar else 0), tilt, lumbar,
                      faint=0.9 if not lumbar else 1.0)
        if not lumbar:  # both rib heads, slightly offset (divergent beam)
            for off in (0.0, rng.uniform(0.6, 1.4)):
                cv.arc(-1.0 + off, y + 3.5 + off, 8.5, 4.2, -PI / 2 - 1.2, 0.1, 0.5, mu=0.6)
    sac = ys[-1] + 4.5
    cv.ell(7.0, sac, 2.2, 4.0, ang=-0.6, mu=0.8, depth=4)
    for _ in range(rng.integers(4, 12)):
        cv.ell(rng.uniform(-9, 3), rng.uniform(14, 40), rng.uniform(0.8, 2.4), rng.uniform(0.7, 1.8),
               mu=-0.2, layer="soft", depth=1.5)


# -- head and neck -------------------------------------------------------------------------
def _cspine_lat(cv: Canvas, rng: np.random.Generator, x0: float, y0: float) -> None:
    lord = rng.uniform(0.5, 2.0)
    for k in range(7):
        y = y0 + 1.95 * k
        x = x0 - lord * math.sin(PI * k / 6)
        if k == 0:  # atlas: anterior arch and posterior arch
            cv.bone_ell(x - 1.2, y, 0.5, 0.6, cortex=0.15)
            cv.rod(x + 1.6, y, x + 3.4, y - 0.1, 0.45, mu=0.8)
            continue
        cv.bone_ell(x, y, 0.9, 0.68, cortex=0.18, depth=1.2, p=4)
        if k == 1:
            cv.rod(x - 0.1, y - 0.6, x - 0.3, y - 2.5, 0.45, 0.35, mu=0.9)  # dens
        cv.ell(x + 1.75, y - 0.1, 0.7, 0.62, mu=0.8, depth=1.1)  # articular pillar
        sp = 2.0 + (1.4 if k == 6 else 0.25 * k)
        cv.rod(x + 2.2, y, x + 2.2 + sp, y + 0.9, 0.38, 0.26, mu=0.8)


def _cspine_ap(cv: Canvas, rng: np.random.Generator, x0: float, y0: float) -> None:
    for k in range(1, 7):
        y = y0 + 1.95 * k
        cv.bone_ell(x0, y, 1.35, 0.62, cortex=0.16, depth=0.9, p=4)
        for sx in (-1, 1):
            cv.ell(x0 + sx * 1.9, y - 0.1, 0.55, 0.75, mu=0.7, depth=0.9)
        cv.ell(x0, y + 0.55, 0.3, 0.45, mu=0.9, depth=0.5)


def draw_head_ap(cv: Canvas, rng: np.random.Generator) -> None:
    """Skull AP (and the upper cervical spine below it)."""
    a, b = _j(rng, 7.4, 0.05), _j(rng, 8.8, 0.05)
    cv.ell(0, -3, a + 0.7, b + 0.7, mu=SOFT, layer="soft", depth=9.5)
    cv.bone_ell(0, -3, a, b, cortex=_j(rng, 0.7, 0.15), marrow=0.0, depth=9.0)
    for sx in (-1, 1):
        cv.arc(sx * 3.2, 2.4, 1.8, 1.6, 0, 2 * PI, 0.35, mu=1.0)  # orbital rim
        cv.ell(sx * 3.2, 2.4, 1.6, 1.4, mu=-0.5, depth=1.5)
        cv.rod(sx * 1.8, 1.6, sx * 6.3, 0.2 + rng.normal(0, 0.4), 0.6, 0.5, mu=1.3)  # petrous ridge
        cv.ell(sx * 3.0, 6.3, 1.6, 1.5, mu=-0.45, depth=1.5)  # maxillary sinus
        cv.rod(sx * 5.0, 10.2, sx * 5.3, 4.8, 0.75, 0.6, mu=0.9)  # mandibular ramus
    cv.ell(0, 7.3, 4.2, 2.2, mu=0.45, depth=2.5)  # maxilla
    for sx in (-1, 1):
        cv.bone_ell(sx * 5.3, 4.0, 1.5, 1.0, cortex=0.25)  # zygoma
    cv.ell(0, 5.5, 1.0, 2.0, mu=-0.4, depth=1.5)  # nasal cavity
    cv.ell(0, -4.5, 1.4, 1.0, mu=-0.3, depth=1.0)  # frontal sinus
    cv.arc(0, 7.0, 5.2, 5.0, 0.3, PI - 0.3, 0.75, mu=1.0)  # mandible
    for k in range(-6, 7):
        t = k / 6.5
        for yy in (9.3, 10.5):
            cv.ell(3.6 * t, yy - 1.2 * t * t, 0.28, 0.55, mu=1.6, depth=0.5)
    cv.rod(0, 9, 0, 30, 5.5, mu=SOFT, layer="soft")
    _cspine_ap(cv, rng, 0.0, 11.5)


def draw_head_lat(cv: Canvas, rng: np.random.Generator) -> None:
    """Skull and cervical spine lateral (face to the left)."""
    a, b = _j(rng, 9.4, 0.05), _j(rng, 7.8, 0.05)
    cv.ell(1.0, -3, a + 0.7, b + 0.7, mu=SOFT, layer="soft", depth=8)
    cv.bone_ell(1.0, -3, a, b, cortex=_j(rng, 0.7, 0.15), marrow=0.0, depth=7.5)
    cv.ell(-8.0, -3.0, 1.1, 1.5, mu=-0.5, depth=1.2)  # frontal sinus
    cv.arc(-6.8, 1.6, 1.6, 1.5, 0, 2 * PI, 0.35, mu=0.9)  # orbit
    cv.ell(-6.0, 5.2, 2.0, 1.7, mu=-0.35, depth=2.0)  # maxillary sinus
    cv.arc(1.0, 0.7, 0.85, 0.7, -0.2, PI + 0.2, 0.25, mu=1.2)  # sella floor
    cv.ell(3.5, 3.0, 1.6, 1.2, mu=1.4, depth=1.5)  # petrous bone
    cv.ell(-7.5, 6.5, 2.5, 3.0, mu=SOFT, layer="soft", depth=5)  # face soft tissue
    cv.ell(-6.0, 7.0, 2.6, 1.7, mu=0.45, depth=2.5)  # maxilla
    cv.rod(-8.3, 7.9, -2.2, 7.9, 0.3, mu=1.0)  # hard palate
    cv.rod(-5.5, 4.4, 0.8, 4.0, 0.4, mu=0.9)  # zygomatic arch
    cv.arc(-3.0, 2.5, 5.5, 2.2, -PI + 0.2, -0.4, 0.3, mu=1.0)  # anterior skull base
    cv.rod(1.8, 1.2, 3.2, 5.2, 0.6, 0.5, mu=1.0)  # clivus
    for k in range(9):
        x = -8.2 + 0.7 * k
        cv.ell(x, 8.8, 0.3, 0.6, mu=1.6, depth=1.0)
        cv.ell(x + 0.1, 10.0, 0.3, 0.6, mu=1.6, depth=1.0)
    ang = rng.uniform(-0.1, 0.15)
    cv.tube(-7.5, 12.2, 0.8, 11.8 + ang * 5, 0.8, flare=0.1)  # mandible body
    cv.tube(0.8, 11.8 + ang * 5, 1.6, 5.2, 0.75, flare=0.1)  # ramus
    cv.rod(3.0, 8, 3.0, 32, 6.0, mu=SOFT, layer="soft")
    cv.rod(-0.8, 12, -0.6, 32, 0.9, mu=-0.25, layer="soft")  # airway
    _cspine_lat(cv, rng, 3.2, 10.5)
    for sx in (-1.0, 1.0):  # shoulders overlapping the lower c-spine
        cv.ell(3.5 + sx * rng.uniform(0, 2), 30.5, 9, 4.5, mu=SOFT, layer="soft", depth=7)


# -- shoulder girdle -----------------------------------------------------------------------
def draw_shoulder(cv: Canvas, rng: np.random.Generator) -> None:
    """Right shoulder AP: humerus, glenoid, scapula, acromion, clavicle, upper ribs, lung apex."""
    rot = rng.uniform(-0.4, 0.4)  # humeral rotation moves the tuberosity
    cv.ell(1.0, 3, 6.5, 10, mu=SOFT, layer="soft", depth=6)
    cv.rod(-18, -2, -18, 30, 15, mu=SOFT, layer="soft", depth_scale=0.6)
    cv.ell(-11, 8, 6.5, 11, mu=-0.15, layer="soft", depth=6)  # lung
    _ribs_ap(cv, rng, -18.0, [-6.0 + 2.35 * i for i in range(7)], 1, widen=1.0)
    cv.ell(-7, 5.5, 4.5, 7.5, ang=0.35, mu=0.5, depth=0.4)  # scapular body
    cv.tube(-2.5, 2.5, -8.0, 13.5, 0.5, flare=0.1, cortex=0.5)  # lateral border
    cv.bone_ell(-2.2, 0.2, 0.8, 2.0, cortex=0.3, depth=1.2)  # glenoid
    cv.rod(-11, -2.8, 0.0, -3.5, 0.7, 0.6, mu=0.8)  # scapular spine
    cv.bone_ell(0.6, -3.7, _j(rng, 2.0), 0.9, ang=0.1, cortex=0.25)  # acromion
    cv.rod(-2.8, -1.2, -1.0, -2.1, 0.7, 0.55, mu=0.9)  # coracoid
    cv.tube(-0.4, -4.4, -15.5, -3.0 + rng.normal(0, 0.6), 0.75, r0=1.0, r1=1.15, flare=0.12)  # clavicle
    hr = _j(rng, 2.4, 0.07)
    cv.bone_ell(0.0, 0.0, hr, hr, cortex=0.22, marrow=0.4, depth=hr)
    cv.bone_ell(1.6 + rot, -0.5, 1.2, 1.5, cortex=0.15, marrow=0.35)  # greater tuberosity
    cv.tube(0.9, 1.8, 1.6, 30, 1.3, r0=2.0, flare=0.08, cortex=0.4)


# -- pelvis and hip ------------------------------------------------------------------------
def draw_pelvis(cv: Canvas, rng: np.random.Generator, abduct: tuple[float, float] = (0.0, 0.0)) -> None:
    """Pelvis AP with both hips; ``abduct`` swings each femur (radians) about its head."""
    cv.ell(0, 0, 20, 17, mu=SOFT, layer="soft", depth=10, p=4)
    cv.rod(0, -30, 0, -4, 15, mu=SOFT, layer="soft", depth_scale=0.6)
    for _ in range(rng.integers(2, 9)):
        cv.ell(rng.uniform(-9, 9), rng.uniform(-18, -2), rng.uniform(0.8, 2.2), rng.uniform(0.7, 1.8),
               mu=-0.2, layer="soft", depth=1.5)
    _vertebra_ap(cv, 0, -18.6, 2.5, 1.35, True, rng)
    _vertebra_ap(cv, 0, -15.0, 2.6, 1.3, True, rng)
    cv.ell(0, -9.5, 4.6, 3.2, mu=0.45, depth=2.0)  # sacrum, tapering to the coccyx
    cv.ell(0, -6.0, 3.0, 2.8, mu=0.45, depth=1.8)
    cv.ell(0, -3.0, 1.4, 2.0, mu=0.45, depth=1.2)
    for k in range(4):
        for sx in (-1, 1):
            cv.ell(sx * 1.6, -10.5 + 1.9 * k, 0.45, 0.4, mu=-0.45, depth=1.0)
    fw = _j(rng, 1.0, 0.05)
    for i, sx in enumerate((-1, 1)):
        cv.ell(sx * 7.8 * fw, -7.5, 6.2 * fw, 5.5, ang=sx * 0.5, mu=0.6, depth=1.1)  # iliac wing
        cv.arc(sx * 8.0 * fw, -5.5, 7.3 * fw, 6.3, -PI / 2 - 1.0, -PI / 2 + 1.0, 0.55, ang=sx * 0.35)
        cv.rod(sx * 3.6, -11.5, sx * 4.6, -5, 0.25, mu=-0.3)  # SI joint
        cv.arc(0, -2.0, 7.6 * fw, 6.6, (0.15 if sx > 0 else PI / 2), (PI / 2 if sx > 0 else PI - 0.15),
               0.4, mu=0.9)  # pelvic brim
        hx = sx * 10.0 * fw
        cv.arc(hx, 0.0, 3.0, 3.0, -PI + 0.3, -0.2, 0.55, mu=1.2, cortex=0.6)  # acetabular roof
        cv.bone_ell(hx, 0.0, 2.45, 2.45, cortex=0.22, marrow=0.45)
        cv.tube(sx * 8.6 * fw, 2.0, sx * 1.3, 4.6, 0.85, flare=0.15)  # superior pubic ramus
        cv.tube(sx * 1.3, 6.8, sx * 6.5 * fw, 9.0, 0.8, flare=0.15)  # inferior ramus
        cv.bone_ell(sx * 7.6 * fw, 9.3, 1.8, 1.6, cortex=0.3)  # ischial tuberosity
        cv.arc(sx * 5.4 * fw, 6.2, 2.4, 2.0, 0, 2 * PI, 0.45, mu=0.9)  # obturator ring
        ab = sx * abduct[i]
        c, s = math.cos(ab), math.sin(ab)

        def rot(px: float, py: float, hx: float = hx, c: float = c, s: float = s) -> tuple[float, float]:
            return hx + c * (px - hx) - s * py, s * (px - hx) + c * py

        nx, ny = rot(hx + sx * 4.2, 3.4)
        cv.tube(hx, 0.0, nx, ny, 1.55, flare=0.1, cortex=0.3)  # femoral neck
        gx, gy = rot(hx + sx * 5.0, 3.0)
        cv.bone_ell(gx, gy, 1.8, 2.4, ang=ab, cortex=0.2)  # greater trochanter
        lx, ly = rot(hx + sx * 3.0, 6.5)
        cv.bone_ell(lx, ly, 0.8, 0.9, cortex=0.15)  # lesser trochanter
        s0x, s0y = rot(hx + sx * 4.6, 4.0)
        s1x, s1y = rot(hx + sx * 5.8, 40.0)
        cv.tube(s0x, s0y, s1x, s1y, 1.5, r0=2.0, flare=0.08, cortex=0.42)
        ux, uy = rot(hx + sx * 3.0, 9)
        tx, ty = rot(hx + sx * 5.0, 40)
        cv.rod(ux, uy, tx, ty, 7.5, 6.0, mu=SOFT, layer="soft", depth_scale=0.8)


# -- elbow and knee ------------------------------------------------------------------------
def draw_elbow_ap(cv: Canvas, rng: np.random.Generator) -> None:
    """Right elbow AP: distal humerus with condyles and fossa, radial head, proximal ulna."""
    val = rng.uniform(0.0, 0.25)  # carrying angle
    cv.rod(0, -26, 0, 0, 4.2, 3.8, mu=SOFT, layer="soft")
    cv.rod(0, 0, 26 * math.sin(val), 26, 3.8, 2.8, mu=SOFT, layer="soft")
    cv.tube(0, -26, 0, -3.0, 1.1, r1=2.0, flare=0.25)
    cv.bone_ell(0, -1.9, _j(rng, 3.0, 0.06), 1.3, cortex=0.2, p=4, depth=1.4)  # condyles
    cv.bone_ell(-3.0, -2.6, 0.8, 0.9, cortex=0.15)  # medial epicondyle
    cv.ell(0, -2.6, 0.9, 0.9, mu=-0.55, depth=0.8)  # olecranon fossa
    cv.bone_ell(-1.0, -0.6, 1.3, 0.8, cortex=0.18)  # trochlea
    cv.bone_ell(1.4, -0.7, 1.0, 0.75, cortex=0.18)  # capitulum
    s, c = math.sin(val), math.cos(val)
    cv.bone_ell(1.6, 0.9, 1.0, 0.5, cortex=0.15)  # radial head
    cv.tube(1.6, 1.2, 1.6 + 23 * s + 0.8, 1.2 + 23 * c, 0.65, r1=1.2, flare=0.12)
    cv.bone_ell(-0.8, 0.8, 1.3, 0.9, cortex=0.2)  # coronoid
    cv.tube(-0.8, 1.0, -0.8 + 23 * s - 1.0, 1.0 + 23 * c, 0.75, r1=0.55, flare=0.12)


def draw_elbow_lat(cv: Canvas, rng: np.random.Generator) -> None:
    """Right elbow lateral, flexed 60-110 degrees: concentric condyles, olecranon, forearm."""
    fl = math.radians(rng.uniform(60, 110))
    d = (-math.sin(fl), math.cos(fl))  # forearm direction (anterior = -x)
    cv.rod(0, -26, 0, 0, 4.2, 3.8, mu=SOFT, layer="soft")
    cv.rod(0, 0, 26 * d[0], 26 * d[1], 3.8, 2.8, mu=SOFT, layer="soft")
    cv.tube(0.3, -26, 0, -2.0, 1.1, r1=1.6, flare=0.2)
    cv.bone_ell(0, -0.5, 1.6, 1.6, cortex=0.3)
    cv.arc(0, -0.5, 1.0, 1.0, 0, 2 * PI, 0.25, mu=0.7)
    cv.bone_ell(1.8, -1.4, 1.0, 1.5, ang=0.3, cortex=0.2)  # olecranon
    n = (d[1], -d[0])
    for off, r, r1 in ((0.6, 0.8, 0.55), (-0.8, 0.65, 1.1)):
        x0, y0 = 0.6 * d[0] + off * n[0], 0.9 + 0.6 * d[1] + off * n[1]
        cv.tube(x0, y0, x0 + 22 * d[0], y0 + 22 * d[1], (r + r1) / 2, r0=r, r1=r1, flare=0.15)


def draw_knee_ap(cv: Canvas, rng: np.random.Generator) -> None:
    """Right knee AP: femoral condyles and notch, tibial plateau, fibula, overlapping patella."""
    cv.rod(0, -36, 0, 36, _j(rng, 6.5, 0.1), 5.0, mu=SOFT, layer="soft")
    fw = _j(rng, 1.0, 0.06)
    cv.tube(0, -36, 0, -4.5, 1.6, r1=3.4 * fw, flare=0.2, cortex=0.4)
    for sx in (-1, 1):
        cv.bone_ell(sx * 2.2 * fw, -1.5, 2.2 * fw, 2.2, cortex=0.2, depth=2.5)
    cv.ell(0, -1.0, 0.9, 1.2, mu=-0.5, depth=1.2)  # notch
    gap = rng.uniform(0.2, 0.6)
    cv.bone_ell(0, 1.4 + gap, 4.0 * fw, 1.2, cortex=0.2, p=4, depth=2.5)  # plateau
    cv.ell(0, 0.4 + gap, 0.6, 0.6, mu=0.8)  # tibial spines
    cv.tube(0, 1.8 + gap, 0.3, 36, 1.6, r0=3.5 * fw, flare=0.18, cortex=0.4)
    cv.bone_ell(3.7 * fw, 3.5 + gap, 0.95, 1.1, cortex=0.15)  # fibular head
    cv.tube(3.8 * fw, 4.2 + gap, 3.3, 36, 0.55, flare=0.05)
    cv.bone_ell(rng.normal(0.3, 0.4), -3.0, 2.2, 2.6, cortex=0.25, mu=0.55, marrow=0.25, depth=1.8)  # patella


def draw_knee_lat(cv: Canvas, rng: np.random.Generator) -> None:
    """Right knee lateral (anterior to the left), flexed 0-40 degrees, patella in front."""
    fl = math.radians(rng.uniform(0, 40))
    d = (-math.sin(fl), math.cos(fl))
    cv.rod(0, -36, 0, 0, 6.5, 6.0, mu=SOFT, layer="soft")
    cv.rod(0, 0, 36 * d[0], 36 * d[1], 6.0, 4.5, mu=SOFT, layer="soft")
    cv.tube(0.5, -36, 0, -3.0, 1.7, r1=2.6, flare=0.2, cortex=0.4)
    cv.bone_ell(0.6, -0.9, 2.9, 2.6, cortex=0.25, depth=3.5)
    cv.bone_ell(0.9 + rng.uniform(0, 0.6), -0.7, 2.7, 2.5, cortex=0.2, depth=3.0, mu=0.5, marrow=0.15)
    cv.bone_ell(-4.3, -2.5, 1.0, 2.3, ang=0.2, cortex=0.25)  # patella
    n = (d[1], -d[0])
    px, py = 0.5 * n[0] + 2.2 * d[0], 2.2 * d[1]
    cv.bone_ell(px, py, 3.7, 1.1, ang=fl - 0.1, cortex=0.2, p=4, depth=3.0)  # plateau
    cv.tube(px + 0.5 * d[0], py + 0.5 * d[1], px + 34 * d[0], py + 34 * d[1], 1.7, r0=3.2, flare=0.18,
            cortex=0.4)
    cv.bone_ell(px - 2.3 * n[0] + 1.8 * d[0], py - 2.3 * n[1] + 1.8 * d[1], 0.9, 1.3, cortex=0.2)  # tuberosity
    fx, fy = px + 2.6 * n[0] + 2.0 * d[0], py + 2.6 * n[1] + 2.0 * d[1]
    cv.bone_ell(fx, fy, 0.9, 1.1, cortex=0.15)  # fibular head
    cv.tube(fx, fy, fx + 32 * d[0] - 0.8 * n[0], fy + 32 * d[1] - 0.8 * n[1], 0.55, flare=0.05)


# -- hand and foot -------------------------------------------------------------------------
def _ray(cv: Canvas, rng: np.random.Generator, x: float, y: float, ang: float,
         segs: list[tuple[float, float]], gap: float, soft_r: float, fan: float = 0.0) -> None:
    """One finger or toe: bones (length, radius) along direction ``ang`` from (x, y), upwards;
    the phalanges turn by ``fan`` more (abducted fingers)."""
    flex = rng.uniform(0.6, 1.0)
    dx, dy = math.sin(ang), -math.cos(ang)
    x0, y0 = x, y
    for i, (length, r) in enumerate(segs):
        if i == 1 and fan:
            dx, dy = math.sin(ang + fan), -math.cos(ang + fan)
        ln = length * (flex if i > 0 else 1.0)
        x1, y1 = x0 + dx * ln, y0 + dy * ln
        tip = i == len(segs) - 1 and i > 0
        cv.tube(x0, y0, x1, y1, r * 0.8, r0=r * 1.15, r1=r * (0.9 if tip else 1.05), flare=0.3, cortex=0.45)
        if i > 0 or len(segs) <= 3:
            cv.rod(x0, y0, x1, y1, soft_r, soft_r * 0.9, mu=SOFT, layer="soft", depth_scale=0.9)
        x0, y0 = x1 + dx * gap, y1 + dy * gap


def draw_hand(cv: Canvas, rng: np.random.Generator) -> None:
    """Right hand PA: forearm ends, carpus, five metacarpals, phalanges; fingers spread or closed."""
    spread = rng.uniform(0.3, 1.4)
    cv.rod(0, -1, 0, 24, 3.3, mu=SOFT, layer="soft", depth_scale=0.6)
    cv.ell(0.2, -5.5, 4.4, 5.0, mu=SOFT, layer="soft", depth=1.4)
    cv.tube(1.5, 24, 1.3, 1.0, 1.0, r1=1.7, flare=0.12, cortex=0.4)  # radius
    cv.tube(-2.3, 24, -1.9, 1.5, 0.8, r1=0.9, flare=0.1, cortex=0.4)  # ulna
    for x, y, a, b, ang in ((1.6, -0.5, 1.0, 0.65, 0.5), (0.1, -0.4, 0.8, 0.75, 0), (-1.3, -0.6, 0.7, 0.6, 0),
                            (-1.8, -0.2, 0.45, 0.45, 0), (2.4, -2.2, 0.8, 0.7, 0.3), (1.2, -2.4, 0.6, 0.6, 0),
                            (0.0, -2.3, 0.72, 1.05, 0), (-1.3, -2.2, 0.8, 0.9, 0)):
        cv.bone_ell(x, y, _j(rng, a, 0.05), _j(rng, b, 0.05), ang, cortex=0.13, marrow=0.45)
    bases = (1.3, 0.2, -0.9, -1.9)
    mc = (6.8, 6.5, 5.8, 5.3)
    pp, mp, dp = (4.0, 4.5, 4.2, 3.4), (2.4, 2.8, 2.6, 1.9), (1.7, 1.9, 1.8, 1.6)
    scale = _j(rng, 1.0, 0.06)
    for i, bx in enumerate(bases):
        ang = (0.12 - 0.08 * i) + spread * (0.15 - 0.1 * i) + rng.normal(0, 0.03)
        segs = [(mc[i] * scale, 0.5), (pp[i] * scale, 0.5), (mp[i] * scale, 0.42), (dp[i] * scale, 0.36)]
        _ray(cv, rng, bx, -3.4, ang, segs, 0.22, 0.95, fan=spread * (0.1 - 0.07 * i))
    thumb = 0.45 + 0.25 * spread
    _ray(cv, rng, 2.7, -2.8, thumb, [(4.3 * scale, 0.55), (3.0 * scale, 0.52), (2.2 * scale, 0.42)], 0.22, 1.05)
    cv.ell(3.9, -6.3, 0.3, 0.3)  # sesamoid


def draw_foot_dp(cv: Canvas, rng: np.random.Generator) -> None:
    """Right foot dorsoplantar: tarsus, five metatarsals, short toes, hallux sesamoids."""
    cv.ell(0.2, -3.5, _j(rng, 5.2, 0.05), 10.5, mu=SOFT, layer="soft", depth=2.6)
    cv.ell(0, 6.0, 3.5, 5, mu=SOFT, layer="soft", depth=3.5)
    for x, y, a, b in ((-0.6, 8.5, 2.0, 3.2), (0.9, 5.3, 1.8, 1.5), (1.3, 3.2, 2.0, 0.8), (-1.9, 2.4, 1.2, 1.2),
                       (2.1, 1.5, 1.0, 0.9), (0.9, 1.3, 0.6, 0.75), (-0.3, 1.4, 0.65, 0.75)):
        cv.bone_ell(x, y, _j(rng, a, 0.05), _j(rng, b, 0.05), cortex=0.15, marrow=0.45)
    scale = _j(rng, 1.0, 0.06)
    bases = ((2.2, 0.3, 0.13, 6.6, 0.7), (0.9, 0.1, 0.05, 7.5, 0.45), (-0.2, 0.2, -0.03, 7.1, 0.43),
             (-1.3, 0.4, -0.1, 6.6, 0.42), (-2.4, 0.9, -0.18, 6.0, 0.45))
    toes = ([(3.0, 0.6), (2.3, 0.55)], [(2.3, 0.35), (0.9, 0.3), (0.8, 0.28)],
            [(2.0, 0.33), (0.8, 0.3), (0.7, 0.27)], [(1.8, 0.32), (0.7, 0.28), (0.7, 0.26)],
            [(1.6, 0.32), (0.6, 0.28), (0.6, 0.26)])
    for (bx, by, ang, ln, r), toe in zip(bases, toes, strict=True):
        ang += rng.normal(0, 0.03)
        _ray(cv, rng, bx, by, ang, [(ln * scale, r)] + [(a * scale, b) for a, b in toe], 0.25, 0.8)
    cv.bone_ell(3.4, -6.2, 0.45, 0.45)
    cv.bone_ell(2.5, -6.3, 0.4, 0.4)
    cv.tube(-2.6, 0.8, -3.6, 1.6, 0.5, flare=0.2)  # base of 5th metatarsal


def draw_foot_lat(cv: Canvas, rng: np.random.Generator) -> None:
    """Right foot and ankle lateral (toes to the left): tibia, fibula, talus, calcaneus, arch."""
    arch = rng.uniform(-0.5, 0.8)
    cv.rod(2.8, -30, 2.8, -2, 4.2, 3.6, mu=SOFT, layer="soft")
    cv.ell(-2.5, 2.2, 12.5, 4.2, ang=0.08, mu=SOFT, layer="soft", depth=4)
    cv.ell(5.5, 2.0, 3.5, 4.0, mu=SOFT, layer="soft", depth=3.5)
    cv.tube(2.8, -30, 2.6, -2.4, 1.5, r1=2.3, flare=0.15, cortex=0.4)  # tibia
    cv.tube(4.1, -30, 4.0, -0.6, 0.6, r1=1.0, flare=0.1)  # fibula
    cv.bone_ell(2.8, -0.3, 2.4, 1.8, cortex=0.2)  # talus dome
    cv.bone_ell(0.3, 0.7, 1.4, 1.0, ang=-0.3, cortex=0.15)  # talar head
    cv.bone_ell(5.6, 3.2, _j(rng, 3.6, 0.05), 1.9, ang=-0.25, cortex=0.2)  # calcaneus
    cv.bone_ell(-0.9, 1.0 + 0.3 * arch, 0.8, 1.4, cortex=0.15)  # navicular
    cv.bone_ell(1.2, 3.0, 1.5, 1.1, cortex=0.15)  # cuboid
    cv.bone_ell(-2.6, 1.4 + 0.4 * arch, 1.2, 1.3, cortex=0.15)  # cuneiforms
    for k in range(5):
        y0 = 1.2 + 0.35 * k + 0.5 * arch
        cv.tube(-3.5, y0, -10.5, 3.5 + 0.15 * k, 0.45, r0=0.6, r1=0.55, flare=0.2)
        cv.tube(-11.0, 3.5 + 0.15 * k, -13.6 + 0.3 * k, 3.3 + 0.1 * k, 0.3, flare=0.3)


def draw_ankle_ap(cv: Canvas, rng: np.random.Generator) -> None:
    """Right ankle AP / mortise: tibial plafond, malleoli, talar dome, calcaneus behind."""
    cv.rod(0, -30, 0, 4, 4.5, 4.0, mu=SOFT, layer="soft")
    cv.ell(0.3, 4.5, 5.0, 4.0, mu=SOFT, layer="soft", depth=5)
    cv.tube(0, -30, 0, -1.6, 1.6, r1=_j(rng, 2.6, 0.06), flare=0.18, cortex=0.4)
    cv.bone_ell(-2.2, 0.1, 0.8, 1.4, ang=0.1, cortex=0.15)  # medial malleolus
    fx = _j(rng, 3.3, 0.05)
    cv.tube(fx, -30, fx, 0.3, 0.6, r1=1.0, flare=0.1)
    cv.bone_ell(fx, 1.2, 0.9, 1.6, cortex=0.18)  # lateral malleolus
    gap = rng.uniform(0.2, 0.5)
    cv.bone_ell(0.4, 1.5 + gap, 2.4, 1.5, cortex=0.2, depth=2.5)  # talus
    cv.bone_ell(0.7, 5.2 + gap, 2.4, 2.0, cortex=0.2, mu=0.6, marrow=0.25, depth=3.5)  # calcaneus


# -- regions -------------------------------------------------------------------------------
@dataclass(frozen=True)
class View:
    """One way a region is filmed: scene, centre (cm), field of view (cm) and pose ranges."""

    name: str
    draw: Draw
    center: tuple[float, float]
    fov: tuple[float, float]
    weight: float = 1.0
    angle: float = 0.2  # max in-plane rotation (radians)
    shift: float = 0.08  # max centring error, fraction of the field of view
    squash: tuple[float, float] = (1.0, 1.0)


def _pelvis_hip(abduct: tuple[float, float]) -> Draw:
    return lambda cv, rng: draw_pelvis(cv, rng, (rng.uniform(*abduct), rng.uniform(*abduct)))


# The region vocabulary (the same names, in the same order, as radaudit.pacs.regions.DEFAULT_REGIONS; a test checks it).
REGIONS: tuple[str, ...] = (
    "skull", "cervical_spine", "thoracic_spine", "lumbar_spine", "chest", "clavicle", "shoulder",
    "elbow", "hand", "pelvis", "hip", "knee", "ankle", "foot",
)

VIEWS: dict[str, tuple[View, ...]] = {
    "skull": (View("ap", draw_head_ap, (0, -0.5), (22, 28)), View("lat", draw_head_lat, (-0.5, 0), (22, 28))),
    "cervical_spine": (View("lat", draw_head_lat, (3.5, 18), (18, 26), 1.5, 0.12),
                       View("ap", draw_head_ap, (0, 19), (16, 24), 1.0, 0.12)),
    "thoracic_spine": (View("ap", draw_trunk_ap, (0, -1), (28, 40), 1.0, 0.1),
                       View("lat", draw_trunk_lat, (4, -1), (28, 40), 1.0, 0.1)),
    "lumbar_spine": (View("ap", draw_trunk_ap, (0, 23), (24, 34), 1.0, 0.1),
                     View("lat", draw_trunk_lat, (4, 23), (24, 34), 1.0, 0.1)),
    "chest": (View("pa", draw_trunk_ap, (0, -3), (36, 44), 3.0, 0.08),
              View("lat", draw_trunk_lat, (0, -2), (34, 42), 1.0, 0.08)),
    "clavicle": (View("ap", draw_shoulder, (-7.5, -3), (20, 28), 1.0, 0.2),),
    "shoulder": (View("ap", draw_shoulder, (-1.5, 2.5), (20, 30), 1.0, 0.25),
                 View("ap_rot", draw_shoulder, (-3, 3), (24, 32), 0.5, 0.35, squash=(0.75, 0.9))),
    "elbow": (View("ap", draw_elbow_ap, (0, 0), (16, 26), 1.0, 0.3),
              View("lat", draw_elbow_lat, (-1, 2), (18, 28), 1.0, 0.35)),
    "hand": (View("pa", draw_hand, (0, -5.5), (22, 30), 1.5, 0.3),
             View("obl", draw_hand, (0, -5.5), (22, 30), 1.0, 0.3, squash=(0.6, 0.8))),
    "pelvis": (View("ap", _pelvis_hip((0.0, 0.12)), (0, -2), (34, 44), 1.0, 0.08),),
    "hip": (View("ap", _pelvis_hip((0.0, 0.15)), (-10.5, 3), (20, 30), 1.0, 0.2),
            View("lauenstein", _pelvis_hip((0.5, 0.9)), (-11, 3), (20, 30), 1.0, 0.25)),
    "knee": (View("ap", draw_knee_ap, (0, 0), (22, 34), 1.0, 0.2),
             View("lat", draw_knee_lat, (-0.5, 1), (22, 34), 1.0, 0.3)),
    "ankle": (View("ap", draw_ankle_ap, (0.5, 0), (18, 26), 1.0, 0.2),
              View("lat", draw_foot_lat, (2.5, 0.5), (18, 26), 1.0, 0.25)),
    "foot": (View("dp", draw_foot_dp, (0, -2.5), (22, 30), 1.2, 0.25),
             View("obl", draw_foot_dp, (0, -2.5), (22, 30), 0.6, 0.25, squash=(0.65, 0.8)),
             View("lat", draw_foot_lat, (-3.0, 0.5), (24, 32), 1.0, 0.2)),
}

# Regions filmed per body side (laterality in the header and an L/R marker).
LATERAL_REGIONS = frozenset({"clavicle", "shoulder", "elbow", "hand", "hip", "knee", "ankle", "foot"})
