from flashlive.cli import main

raise SystemExit(main())
