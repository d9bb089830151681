from eyeops.cli import main

main()
