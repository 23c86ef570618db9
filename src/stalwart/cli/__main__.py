"""``python -m stalwart.cli``: the same as the ``stalwart`` console script."""

from stalwart.cli import main

if __name__ == "__main__":
    main()
