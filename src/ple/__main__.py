from ple.cli import main

raise SystemExit(main())
