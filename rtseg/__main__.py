from rtseg.cli import main

main()
