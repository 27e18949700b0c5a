from cemsd.cli import main

main()
