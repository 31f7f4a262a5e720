from medddpm.cli import main

main()
