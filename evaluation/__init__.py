"""Whether the answers work: HumanEval completions run against their tests in a locked-down sandbox container, outside
every measured window (``orchestrate.py evaluate``), and the outcomes kept beside the trial records.

- ``humaneval``  the programs: prompt + completion (cut at the standard stop sequences) + test + check(entry_point)
- ``executor``   runs inside the sandbox (standard library only): each program in its own process, with a timeout and
                 resource limits, one JSON line per outcome
- ``sandbox``    batches of programs through a locked-down container it is given (the orchestrator's Docker layer runs
                 it: orchestrator/docker_sandbox.py), outcomes read back, resuming after a container death
- ``evaluate``   every ok trial of a run with full HumanEval prompts -> results/<run>/evaluations/<trial>.json
"""
