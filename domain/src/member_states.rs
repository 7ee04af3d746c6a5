//! The 193 UN member states: the states the Universal Periodic Review reviews.
//!
//! Names are the short names the UN uses in its list of member states, which
//! differ from the ISO 3166-1 names in [`super::country`], e.g.
//! "Bolivia (Plurinational State of)", "Türkiye", "Côte d'Ivoire" and
//! "Netherlands (Kingdom of the)". Observer states (Holy See, State of
//! Palestine) and territories are not members and are not listed.

/// (ISO 3166-1 alpha-2 code, UN short name), sorted by code so lookups are a
/// binary search.
///
/// Data, not code: a new member or a renaming is a one-line diff.
pub const MEMBER_STATES: [(&str, &str); 193] = [
    ("AD", "Andorra"),
    ("AE", "United Arab Emirates"),
    ("AF", "Afghanistan"),
    ("AG", "Antigua and Barbuda"),
    ("AL", "Albania"),
    ("AM", "Armenia"),
    ("AO", "Angola"),
    ("AR", "Argentina"),
    ("AT", "Austria"),
    ("AU", "Australia"),
    ("AZ", "Azerbaijan"),
    ("BA", "Bosnia and Herzegovina"),
    ("BB", "Barbados"),
    ("BD", "Bangladesh"),
    ("BE", "Belgium"),
    ("BF", "Burkina Faso"),
    ("BG", "Bulgaria"),
    ("BH", "Bahrain"),
    ("BI", "Burundi"),
    ("BJ", "Benin"),
    ("BN", "Brunei Darussalam"),
    ("BO", "Bolivia (Plurinational State of)"),
    ("BR", "Brazil"),
    ("BS", "Bahamas"),
    ("BT", "Bhutan"),
    ("BW", "Botswana"),
    ("BY", "Belarus"),
    ("BZ", "Belize"),
    ("CA", "Canada"),
    ("CD", "Democratic Republic of the Congo"),
    ("CF", "Central African Republic"),
    ("CG", "Congo"),
    ("CH", "Switzerland"),
    ("CI", "Côte d'Ivoire"),
    ("CL", "Chile"),
    ("CM", "Cameroon"),
    ("CN", "China"),
    ("CO", "Colombia"),
    ("CR", "Costa Rica"),
    ("CU", "Cuba"),
    ("CV", "Cabo Verde"),
    ("CY", "Cyprus"),
    ("CZ", "Czechia"),
    ("DE", "Germany"),
    ("DJ", "Djibouti"),
    ("DK", "Denmark"),
    ("DM", "Dominica"),
    ("DO", "Dominican Republic"),
    ("DZ", "Algeria"),
    ("EC", "Ecuador"),
    ("EE", "Estonia"),
    ("EG", "Egypt"),
    ("ER", "Eritrea"),
    ("ES", "Spain"),
    ("ET", "Ethiopia"),
    ("FI", "Finland"),
    ("FJ", "Fiji"),
    ("FM", "Micronesia (Federated States of)"),
    ("FR", "France"),
    ("GA", "Gabon"),
    ("GB", "United Kingdom of Great Britain and Northern Ireland"),
    ("GD", "Grenada"),
    ("GE", "Georgia"),
    ("GH", "Ghana"),
    ("GM", "Gambia (Republic of The)"),
    ("GN", "Guinea"),
    ("GQ", "Equatorial Guinea"),
    ("GR", "Greece"),
    ("GT", "Guatemala"),
    ("GW", "Guinea-Bissau"),
    ("GY", "Guyana"),
    ("HN", "Honduras"),
    ("HR", "Croatia"),
    ("HT", "Haiti"),
    ("HU", "Hungary"),
    ("ID", "Indonesia"),
    ("IE", "Ireland"),
    ("IL", "Israel"),
    ("IN", "India"),
    ("IQ", "Iraq"),
    ("IR", "Iran (Islamic Republic of)"),
    ("IS", "Iceland"),
    ("IT", "Italy"),
    ("JM", "Jamaica"),
    ("JO", "Jordan"),
    ("JP", "Japan"),
    ("KE", "Kenya"),
    ("KG", "Kyrgyzstan"),
    ("KH", "Cambodia"),
    ("KI", "Kiribati"),
    ("KM", "Comoros"),
    ("KN", "Saint Kitts and Nevis"),
    ("KP", "Democratic People's Republic of Korea"),
    ("KR", "Republic of Korea"),
    ("KW", "Kuwait"),
    ("KZ", "Kazakhstan"),
    ("LA", "Lao People's Democratic Republic"),
    ("LB", "Lebanon"),
    ("LC", "Saint Lucia"),
    ("LI", "Liechtenstein"),
    ("LK", "Sri Lanka"),
    ("LR", "Liberia"),
    ("LS", "Lesotho"),
    ("LT", "Lithuania"),
    ("LU", "Luxembourg"),
    ("LV", "Latvia"),
    ("LY", "Libya"),
    ("MA", "Morocco"),
    ("MC", "Monaco"),
    ("MD", "Republic of Moldova"),
    ("ME", "Montenegro"),
    ("MG", "Madagascar"),
    ("MH", "Marshall Islands"),
    ("MK", "North Macedonia"),
    ("ML", "Mali"),
    ("MM", "Myanmar"),
    ("MN", "Mongolia"),
    ("MR", "Mauritania"),
    ("MT", "Malta"),
    ("MU", "Mauritius"),
    ("MV", "Maldives"),
    ("MW", "Malawi"),
    ("MX", "Mexico"),
    ("MY", "Malaysia"),
    ("MZ", "Mozambique"),
    ("NA", "Namibia"),
    ("NE", "Niger"),
    ("NG", "Nigeria"),
    ("NI", "Nicaragua"),
    ("NL", "Netherlands (Kingdom of the)"),
    ("NO", "Norway"),
    ("NP", "Nepal"),
    ("NR", "Nauru"),
    ("NZ", "New Zealand"),
    ("OM", "Oman"),
    ("PA", "Panama"),
    ("PE", "Peru"),
    ("PG", "Papua New Guinea"),
    ("PH", "Philippines"),
    ("PK", "Pakistan"),
    ("PL", "Poland"),
    ("PT", "Portugal"),
    ("PW", "Palau"),
    ("PY", "Paraguay"),
    ("QA", "Qatar"),
    ("RO", "Romania"),
    ("RS", "Serbia"),
    ("RU", "Russian Federation"),
    ("RW", "Rwanda"),
    ("SA", "Saudi Arabia"),
    ("SB", "Solomon Islands"),
    ("SC", "Seychelles"),
    ("SD", "Sudan"),
    ("SE", "Sweden"),
    ("SG", "Singapore"),
    ("SI", "Slovenia"),
    ("SK", "Slovakia"),
    ("SL", "Sierra Leone"),
    ("SM", "San Marino"),
    ("SN", "Senegal"),
    ("SO", "Somalia"),
    ("SR", "Suriname"),
    ("SS", "South Sudan"),
    ("ST", "Sao Tome and Principe"),
    ("SV", "El Salvador"),
    ("SY", "Syrian Arab Republic"),
    ("SZ", "Eswatini"),
    ("TD", "Chad"),
    ("TG", "Togo"),
    ("TH", "Thailand"),
    ("TJ", "Tajikistan"),
    ("TL", "Timor-Leste"),
    ("TM", "Turkmenistan"),
    ("TN", "Tunisia"),
    ("TO", "Tonga"),
    ("TR", "Türkiye"),
    ("TT", "Trinidad and Tobago"),
    ("TV", "Tuvalu"),
    ("TZ", "United Republic of Tanzania"),
    ("UA", "Ukraine"),
    ("UG", "Uganda"),
    ("US", "United States of America"),
    ("UY", "Uruguay"),
    ("UZ", "Uzbekistan"),
    ("VC", "Saint Vincent and the Grenadines"),
    ("VE", "Venezuela (Bolivarian Republic of)"),
    ("VN", "Viet Nam"),
    ("VU", "Vanuatu"),
    ("WS", "Samoa"),
    ("YE", "Yemen"),
    ("ZA", "South Africa"),
    ("ZM", "Zambia"),
    ("ZW", "Zimbabwe"),
];

/// The UN short name of the member state with this (upper-case) code, e.g.
/// `"TR"` gives `"Türkiye"`; `None` for any code that is not a member state,
/// including observers (`"VA"`, `"PS"`), territories and lower-case input.
pub fn member_state_name(code: &str) -> Option<&'static str> {
    MEMBER_STATES
        .binary_search_by(|(c, _)| c.cmp(&code))
        .ok()
        .map(|i| MEMBER_STATES[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_exactly_193_entries() {
        assert_eq!(MEMBER_STATES.len(), 193);
    }

    #[test]
    fn codes_are_sorted_and_unique() {
        assert!(
            MEMBER_STATES.windows(2).all(|w| w[0].0 < w[1].0),
            "codes must be strictly increasing"
        );
    }

    #[test]
    fn codes_are_two_upper_case_ascii_letters_and_names_are_set() {
        for (code, name) in MEMBER_STATES {
            assert!(
                code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()),
                "bad code {code:?}"
            );
            assert!(!name.is_empty(), "empty name for {code}");
            assert_eq!(name.trim(), name, "stray whitespace in {name:?}");
        }
    }

    #[test]
    fn every_code_is_an_assigned_iso_code() {
        for (code, _) in MEMBER_STATES {
            assert!(
                super::super::country::COUNTRIES
                    .binary_search_by(|(c, _)| c.cmp(&code))
                    .is_ok(),
                "{code} is not an assigned ISO 3166-1 alpha-2 code"
            );
        }
    }

    #[test]
    fn un_short_names_are_used() {
        for (code, name) in [
            ("BO", "Bolivia (Plurinational State of)"),
            ("VE", "Venezuela (Bolivarian Republic of)"),
            ("IR", "Iran (Islamic Republic of)"),
            ("FM", "Micronesia (Federated States of)"),
            ("KR", "Republic of Korea"),
            ("KP", "Democratic People's Republic of Korea"),
            ("LA", "Lao People's Democratic Republic"),
            ("MD", "Republic of Moldova"),
            ("RU", "Russian Federation"),
            ("SY", "Syrian Arab Republic"),
            ("TZ", "United Republic of Tanzania"),
            ("GB", "United Kingdom of Great Britain and Northern Ireland"),
            ("US", "United States of America"),
            ("VN", "Viet Nam"),
            ("TR", "Türkiye"),
            ("CZ", "Czechia"),
            ("CI", "Côte d'Ivoire"),
            ("CD", "Democratic Republic of the Congo"),
            ("CG", "Congo"),
            ("SZ", "Eswatini"),
            ("MK", "North Macedonia"),
            ("NL", "Netherlands (Kingdom of the)"),
            ("CV", "Cabo Verde"),
            ("TL", "Timor-Leste"),
            ("BN", "Brunei Darussalam"),
            ("GM", "Gambia (Republic of The)"),
            ("BS", "Bahamas"),
            ("ST", "Sao Tome and Principe"),
            ("KN", "Saint Kitts and Nevis"),
            ("LC", "Saint Lucia"),
            ("VC", "Saint Vincent and the Grenadines"),
            ("GW", "Guinea-Bissau"),
            ("KG", "Kyrgyzstan"),
            ("MM", "Myanmar"),
            ("SO", "Somalia"),
            ("SS", "South Sudan"),
            ("SD", "Sudan"),
            ("NA", "Namibia"),
            ("ME", "Montenegro"),
            ("RS", "Serbia"),
            ("MH", "Marshall Islands"),
            ("PW", "Palau"),
            ("TV", "Tuvalu"),
            ("NR", "Nauru"),
            ("KI", "Kiribati"),
            ("SB", "Solomon Islands"),
            ("VU", "Vanuatu"),
            ("WS", "Samoa"),
            ("TO", "Tonga"),
            ("FJ", "Fiji"),
            ("PG", "Papua New Guinea"),
        ] {
            assert_eq!(member_state_name(code), Some(name), "{code}");
        }
    }

    #[test]
    fn kazakhstan_is_found() {
        assert_eq!(member_state_name("KZ"), Some("Kazakhstan"));
    }

    #[test]
    fn observers_territories_and_unrecognised_codes_are_absent() {
        for code in [
            "VA", "PS", "TW", "AQ", "XK", "HK", "EH", "MO", "PR", "GL", "CK", "NU",
        ] {
            assert_eq!(member_state_name(code), None, "{code} is not a member");
        }
    }

    #[test]
    fn lookup_is_exact() {
        for code in ["kz", "Kz", "", "K", "KZA", " KZ"] {
            assert_eq!(member_state_name(code), None, "{code:?}");
        }
    }
}
