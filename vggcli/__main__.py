from vggcli.cli import main

main()
