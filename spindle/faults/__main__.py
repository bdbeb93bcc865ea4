from spindle.faults.run import main

raise SystemExit(main())
