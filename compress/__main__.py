from compress.cli import main

if __name__ == "__main__":  # not when a spawned process (search.finish_processes) imports it
    raise SystemExit(main())
