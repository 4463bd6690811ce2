"""``python -m hermes.predict``: see :mod:`hermes.eval.predict`."""

from hermes.eval.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
