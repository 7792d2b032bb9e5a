from __future__ import annotations

import pytest

from node.errors import InvalidInput
from node.personas import list_personas, load_persona


def test_papa_noel_defaults():
    p = load_persona("papa_noel", environ={})
    assert p.language == "es" and p.display_name == "Papá Noel"
    assert p.elevenlabs.voice_id == "bkVwoLpm00fYfz45ZQAb"
    assert p.offline.voice == "es" and p.avatar == "demo"


def test_voice_id_from_env():
    assert load_persona("papa_noel", environ={"PAPA_NOEL_VOICE_ID": "abc"}).elevenlabs.voice_id == "abc"


def test_adding_a_persona_is_adding_a_file(tmp_path):
    (tmp_path / "befana.toml").write_text(
        'name = "befana"\nlanguage = "it"\navatar = "demo"\n[elevenlabs]\nvoice_id = "v1"\n'
        '[offline]\nvoice = "it"\n')
    assert "befana" in list_personas(tmp_path)
    p = load_persona("befana", tmp_path, environ={})
    assert p.language == "it" and p.offline.voice == "it"


@pytest.mark.parametrize("name", ["krampus", "../etc/passwd", ""])
def test_unknown_or_malformed_name(name):
    with pytest.raises(InvalidInput) as e:
        load_persona(name, environ={})
    assert e.value.code == "unknown_persona"
