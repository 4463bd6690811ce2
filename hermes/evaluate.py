"""``python -m hermes.evaluate``: see :mod:`hermes.eval.evaluate`."""

from hermes.eval.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
