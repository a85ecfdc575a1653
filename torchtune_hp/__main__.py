"""``python -m torchtune_hp`` is the ``torchtune-hp`` command."""

from torchtune_hp.entry import main

main()
