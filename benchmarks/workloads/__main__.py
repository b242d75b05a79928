from .cli import main

# asv's discovery imports every module under benchmarks/, this one included
if __name__ == "__main__":
    main()
