from ims.cli.main import main

main()
