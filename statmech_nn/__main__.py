from statmech_nn.cli import main

raise SystemExit(main())
