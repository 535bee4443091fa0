from dsv3ctl.cli import main

main()
