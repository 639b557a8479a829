from sslseg.cli import main

main()
