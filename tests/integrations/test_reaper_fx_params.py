"""mixdaemon_apply_fx_params.lua under lua5.4 against the REAPER stub: a param-engine result's
fx_params.json becomes ReaEQ / ReaComp settings, track volume, pan and width on the tracks that
were converted."""
from __future__ import annotations

import json
import re

import pytest

from mixdaemon.daemon.requestfiles import escape
from mixdaemon.fx.chain import (
    CompressorSettings,
    EqBand,
    ReverbSend,
    StemChain,
    write_fx_params,
)
from tests.support.reaper import LUA, LUAC, Reaper, tone, write_wav

pytestmark = pytest.mark.skipif(LUA is None or LUAC is None, reason="lua5.4/luac5.4 not installed")

DRUMS = StemChain([EqBand("low_shelf", 90.0, 4.0), EqBand("peak", 450.0, -6.5, 1.4), EqBand("peak", 1800.0, 2.0, 0.7),
                   EqBand("peak", 5200.0, -3.0, 1.1), EqBand("high_shelf", 8000.0, 6.0)],
                  CompressorSettings(-24.0, 4.0, 8.0, 180.0), width=0.6, pan=-0.25, gain_db=-3.0)
VOCALS = StemChain(compressor=CompressorSettings(), width=1.4, pan=0.1, reverb=ReverbSend(-6.0, 0.7), gain_db=2.5)


def number(text: str) -> float:
    value = float(re.match(r"\s*([+-]?\d+\.?\d*)", text).group(1))
    return value * 1000 if text.strip().endswith("k") else value


@pytest.fixture
def project(tmp_path):
    """A project whose last conversion (Kick + Snare as drums, Lead Vox as vocals) has a param-engine
    result with fx_params.json beside its manifest."""
    renders = {name: write_wav(tmp_path / "renders" / f"{name}.wav", tone(1.0, 220)) for name in ("Kick", "Snare", "Lead Vox")}
    result_dir = tmp_path / "result"
    result_dir.mkdir()
    write_fx_params(result_dir / "fx_params.json", {"drums": DRUMS, "vocals": VOCALS, "bass": StemChain()})
    manifest = result_dir / "manifest.json"
    roles = {"Kick": "drums", "Snare": "drums", "Lead Vox": "vocals"}
    manifest.write_text(json.dumps({"job_id": 3, "inputs": [{"path": str(p), "role": roles[n]} for n, p in renders.items()],
                                    "outputs": {}}))
    record = ["name=Song", "job_id=3", "state=done", f"manifest={escape(str(manifest))}", "render_start=0"]
    for i, (name, path) in enumerate(renders.items()):
        record += [f"track_guid={{T{i}}}", f"track_name={escape(name)}", f"track_file={escape(str(path))}", "track_start=0"]
    tracks = [{"guid": f"{{T{i}}}", "name": name, "items": []} for i, name in enumerate(renders)]
    tracks.append({"guid": "{OTHER}", "name": "Click", "items": []})
    return Reaper(tmp_path, {"tracks": tracks, "proj_ext_state": {"mixdaemon": {"last_job": escape("\n".join(record))}}})


def fx_named(track: dict, name: str) -> dict:
    matches = [fx for fx in track.get("fx", []) if fx["renamed"] == name]
    assert len(matches) == 1, f"{track['name']}: {[fx['renamed'] for fx in track.get('fx', [])]}"
    return matches[0]


def band_values(fx: dict, bandtype: int, bandidx: int) -> tuple[float, float, float]:
    params = {p["paramtype"]: p for p in fx["params"] if p.get("bandtype") == bandtype and p.get("bandidx") == bandidx}
    return tuple(number(params[k]["display"]) for k in (0, 1, 2))


def octaves(q: float) -> float:
    import math
    return 2 / math.log(2) * math.asinh(1 / (2 * q))


def test_apply_sets_eq_compressor_volume_pan_and_width_on_the_converted_tracks(project):
    result = project.run("mixdaemon_apply_fx_params.lua")
    assert result.get("error") is None and result["boxes"] == [], result
    tracks = {t["name"]: t for t in result["tracks"]}
    assert "fx" not in tracks["Click"] and "volume" not in tracks["Click"]
    for name in ("Kick", "Snare"):  # both drum tracks get the drums chain
        track = tracks[name]
        eq, eq2, comp = fx_named(track, "mixdaemon EQ"), fx_named(track, "mixdaemon EQ 2"), fx_named(track, "mixdaemon comp")
        for (bandtype, bandidx), band, fx in (((1, 0), DRUMS.eq[0], eq), ((2, 0), DRUMS.eq[1], eq), ((2, 1), DRUMS.eq[2], eq),
                                              ((4, 0), DRUMS.eq[4], eq), ((2, 0), DRUMS.eq[3], eq2)):
            freq, gain, bandwidth = band_values(fx, bandtype, bandidx)
            assert freq == pytest.approx(band.freq_hz, rel=0.01)
            assert gain == pytest.approx(band.gain_db, abs=0.02)
            assert bandwidth == pytest.approx(octaves(band.q), abs=0.002)
        assert eq2["bands_enabled"] == {"1:0": False, "2:0": True, "2:1": False, "4:0": False}
        shown = {p["name"]: number(p["display"]) for p in comp["params"] if "display" in p}
        assert shown["Thresh"] == pytest.approx(-24.0, abs=0.01) and shown["Ratio"] == pytest.approx(4.0, abs=0.01)
        assert shown["Attack"] == pytest.approx(8.0, abs=0.01) and shown["Release"] == pytest.approx(180.0, abs=0.1)
        assert comp["enabled"] is True
        assert track["volume"] == pytest.approx(10 ** (-3.0 / 20))
        assert (track["pan_mode"], track["pan"], track["width"]) == (5, -0.25, 0.6)
    vocals = tracks["Lead Vox"]
    assert fx_named(vocals, "mixdaemon comp")["enabled"] is False  # ratio 1: no compression
    assert vocals["width"] == 1 and vocals["volume"] == pytest.approx(10 ** (2.5 / 20))
    assert "width 1.40 set to 1" in result["console"] and "reverb send -6.0 dB" in result["console"]

    again = project.run("mixdaemon_apply_fx_params.lua")  # the same effects are updated, none added
    assert [len(t.get("fx", [])) for t in again["tracks"]] == [3, 3, 3, 0]


def test_apply_explains_a_result_without_fx_params(project, tmp_path):
    (tmp_path / "result" / "fx_params.json").unlink()
    result = project.run("mixdaemon_apply_fx_params.lua")
    assert len(result["boxes"]) == 1 and "--engine param" in result["boxes"][0]
    assert all("fx" not in t for t in result["tracks"])
