"""Main job: ``python beam_runner.py --runner Direct`` builds the bundled demo corpus into shards/demo.

Thin driver; everything lives in ``pipelines``. ``python beam_runner.py --help`` lists our flags;
all other flags are Beam pipeline options (``--runner``, ``--direct_running_mode``, ...).
"""

from pipelines.main import main

if __name__ == "__main__":
    main()
