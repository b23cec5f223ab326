"""genlab train FAMILY: one sub-command per family plug-in, its flags generated from the
options the family declares (families/*.py)."""
from __future__ import annotations

from .. import api
from .options import add, command, exit_code, given, sub


def register(commands) -> None:
    fams = api.families(train_verb=True)
    t = command(commands, "train", f"train a model ({', '.join(f.name for f in fams)})")
    kinds = sub(t, "family", "FAMILY")
    for fam in fams:
        p = command(kinds, fam.name, fam.help, fam.description, fam.epilog or None)
        add(p, fam.all_options())
        p.set_defaults(func=lambda a, fam=fam: exit_code(api.train(fam.name, **given(a, fam.all_options()))))
