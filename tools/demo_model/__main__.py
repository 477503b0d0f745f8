"""``python -m tools.demo_model``: train the demo model."""

from tools.demo_model.train import main

main()
