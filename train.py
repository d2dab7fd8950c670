"""python train.py [overrides]: see fingpt/train.py (also installed as `fingpt-train`)."""

from fingpt.train import main

if __name__ == "__main__":
    main()
