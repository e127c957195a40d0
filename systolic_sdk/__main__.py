from systolic_sdk.cli import main

main()
