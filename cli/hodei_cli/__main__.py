from hodei_cli.main import main

main()
