from streamorch.cli.main import main

main()
